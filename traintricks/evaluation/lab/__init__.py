"""The notes' testable claims, each as a small seeded experiment (``traintricks lab``).

``traintricks lab`` lists the claims; ``traintricks lab CLAIM [CLAIM ...] [--out DIR]`` (or ``all``) runs them on
Fashion-MNIST subsets, each over 3 seeds (more where its ``Claim.seeds`` says) under ``precision="fp32"`` and again
under ``"bf16"``, prints each verdict (HOLDS / DOES NOT HOLD / INCONCLUSIVE) with its numbers, and writes
``DIR/CLAIM.png`` and ``DIR/CLAIM.json``. How a verdict is decided (a margin of 2 standard errors over the seeds, the
same verdict under both precisions) is in :mod:`.core`; a claim that does not hold at this scale is reported as
such, not hidden, and one the experiment is too small to decide is INCONCLUSIVE. ``--quick`` runs tiny versions on
the bundled ``digits`` set (for tests: the plumbing, not the verdicts).

**Your data and model.** ``--set data.KEY=VALUE`` runs the claims on your data (any ``data.*`` key, as for
``traintricks train``: ``data.name=folder``, ``data.root``...) and ``--set model.KEY=VALUE`` on your model
(``model.name=pkg.module:factory`` and its options), where the claim makes sense there; each :class:`Claim` says
what it takes (``takes_data``, ``task``, ``takes_model``, ``varies``):

* a claim judged by test accuracy or cross-entropy needs classification data (others are refused, naming the task);
* with your model, the claim's own architecture options (the lab CNN's widths, the MLP's hidden sizes...) are
  dropped; the model options it *varies* (``model.norm`` for the normalization claims) are kept and applied to
  any model by :mod:`traintricks.surgery` (``convert_norms``); a model they cannot apply to (no norm layers) is
  refused, naming the option;
* without your model, the claim's own network is used: the lab CNN needs images ``(C, H, W)``;
* the synthetic claims (``checkpointing``, ``newton_saddle``, ``huber_outliers``) take neither (they say so and
  run as usual).
"""
from __future__ import annotations

from . import claims as _c
from . import new_claims as _n
from .core import (FAILS, HOLDS, INCONCLUSIVE, LAB_MODEL, PRECISIONS, Claim, Criterion, Lab, LabError, decide,
                   interval)
from .core import run as _run

__all__ = ["CLAIMS", "Claim", "Criterion", "Lab", "LabError", "run_claim", "interval", "decide", "LAB_MODEL",
           "PRECISIONS", "HOLDS", "FAILS", "INCONCLUSIVE"]

C = Criterion
CLAIMS: dict[str, Claim] = {c.name: c for c in [
    Claim("bn_higher_lr", "Batch normalization allows much higher learning rates.",
          "notes: forward pass / normalization; Ioffe & Szegedy 2015 (1502.03167) sec. 3.3",
          "3-layer CNN with and without BN, one-cycle to the nominal peak lr 0.03, 0.1, 0.3, 1 (min_warmup_steps 0), 2 "
          "epochs on 3k images (42 steps); a network's largest usable rate: the largest reaching 90% of its own best "
          "accuracy (log-interpolated where the accuracy crosses that bar)",
          _c.bn_higher_lr,
          [C("usable_lr", "log10(BN's largest usable rate / the un-normalized network's) - log10 2 > 0 (much "
             "higher: at least twice)", " decades", ".2f")],
          _c._plot_bn_higher_lr, varies=("model.norm",)),
    Claim("bn_small_batch", "Batch norm degrades at small batch sizes; group norm and batch renorm do not.",
          "notes: normalization; Wu & He 2018 (1803.08494) fig. 1; Ioffe 2017 (1702.03275)",
          "MLP (BatchNorm1d sees only N values per feature), batch 2 vs 64, lr scaled with the batch, 1 epoch on 1.5k "
          "images", _c.bn_small_batch,
          [C("bn_drop", "BN's accuracy drop from batch 64 to 2, minus 3 pp, > 0", " pp", ".1f"),
           C("gn", "half BN's drop minus GN's drop > 0", " pp", ".1f"),
           C("brn", "BN's drop minus batch renorm's drop > 0", " pp", ".1f")],
          _c._plot_bn_small_batch, varies=("model.norm", "model.norm_groups"), images=False),
    Claim("gn_train_eval", "Group norm computes the same thing in training and inference; batch norm does not.",
          "notes: normalization; Wu & He 2018",
          "3-layer CNNs trained 1 epoch on 1.5k images, evaluated in train mode (batches of 2 and 256) vs eval mode",
          _c.gn_train_eval,
          [C("gn_same", "GN: decades of max |logit(train, batches of 2) - logit(eval)| below 1e-4 > 0", "", ".2f"),
           C("bn_differs", "BN: decades of that difference above 1e-2 > 0", "", ".2f")],
          _c._plot_gn_train_eval, task=None, varies=("model.norm", "model.norm_groups")),
    Claim("checkpointing", "Gradient checkpointing trades compute for memory.",
          "notes: backward pass / memory; Chen et al. 2016 (1604.06174)",
          "16-layer MLP (width 512, batch 256): bytes saved for backward and step time with 0, 2, 4, 8 recomputed "
          "segments", _c.checkpointing,
          [C("memory", "the best segmentation's memory: 0.5 - (x plain) > 0", "", ".3f"),
           C("time", "its time: (x plain) - 1 > 0", "", ".3f")],
          _c._plot_checkpointing, takes_data=False, takes_model=False),
    Claim("batch_memory_noise", "Smaller batches use less memory and give noisier gradients.",
          "notes: weight update / batch size",
          "bytes saved for backward and E||g_B - g||^2 (12 draws) at batch 16, 64, 256 (fixed CNN, eval-mode BN, "
          "full gradient over 2048 images)", _c.batch_memory_noise,
          [C("memory", "smallest log10 rise of memory between neighbouring batch sizes > 0", "", ".3f"),
           C("noise", "smallest log10 fall of gradient noise between them > 0", "", ".3f")],
          _c._plot_batch_memory_noise, panels=2),
    Claim("label_smoothing_calibration", "Label smoothing improves calibration.",
          "notes: losses; Müller, Kornblith & Hinton 2019 (1906.02629)",
          "3-layer CNN fit to 800 images (20 epochs of 16 steps, no weight decay: 100% training accuracy, the "
          "overconfident regime the claim is about) with smoothing 0, 0.05, 0.1; ECE on 5k test images",
          _c.label_smoothing_calibration,
          [C("ece", "ECE of plain cross-entropy minus the best smoothed model's > 0", " pp", ".2f")],
          _c._plot_label_smoothing),
    Claim("early_stopping", "Early stopping prevents overfitting.",
          "notes: evaluation; Prechelt 1998",
          "3-layer CNN overfit on 500 images (500 validation) for 25 epochs at a constant rate 0.05, no weight "
          "decay or smoothing; test loss (1k images) of the weights kept by the best validation epoch and by the "
          "notes' rule (stop when validation does not improve: patience 5) vs the last epoch's; Prechelt's GL_5 and "
          "UP_2 shown, not judged", _c.early_stopping,
          [C("best", "last epoch's test loss minus the best validation epoch's, % of the last's, > 0", "%", ".1f"),
           C("patience", "the same for the weights kept by patience 5 (the notes' rule), > 0", "%", ".1f")],
          _c._plot_early_stopping, seeds=5),
    Claim("onecycle", "The one-cycle policy speeds up convergence (super-convergence).",
          "notes: weight update / schedules; Smith 2018 (1803.09820), Smith & Topin 2017 (1708.07120)",
          "3-layer CNN, a short budget (2 epochs on 3k images, 46 steps; no smoothing): one-cycle (peaks 0.1, 0.3) "
          "vs constant rates 0.01, 0.03, 0.1, the best of each", _c.onecycle,
          [C("accuracy", "best one-cycle's final test accuracy minus the best constant rate's > 0", " pp", ".2f"),
           C("loss", "the best constant rate's final test loss minus the best one-cycle's > 0", "", ".3f")],
          _c._plot_onecycle),
    Claim("clipping", "Gradient clipping prevents divergence.",
          "notes: weight update / gradient transforms; Pascanu et al. 2013 (1211.5063)",
          "CNN without normalization at one-cycle peak lr 0.5, 1 epoch on 3k images (2k test), with and without clip_norm "
          "1.0 (a diverged run counts as chance accuracy; diverged or collapsed: below 1.5 x chance, for both "
          "arms); with your model (--set model...): the model as it is, its normalization included", _c.clipping,
          [C("gap", "clipped minus unclipped test accuracy > 0", " pp", ".1f"),
           C("clipped", "clipped accuracy minus 1.5 x chance > 0 (it did not diverge or collapse)", " pp", ".1f"),
           C("unclipped", "1.5 x chance minus unclipped accuracy > 0 (it diverged or collapsed)", " pp", ".1f")],
          _c._plot_clipping, seeds=5),
    Claim("augmentation_vs_regularization",
          "Data augmentation alone can replace weight decay and dropout.",
          "Hernández-García & König 2019 (1906.11052)",
          "3-layer CNN on 800 images, 8 epochs (3k test images): weight decay 5e-4 + dropout 0.5; augmentation "
          "(random translation by up to 2 px) alone; augmentation + weight decay + dropout",
          _n.augmentation_vs_regularization,
          [C("aug_vs_explicit", "augmentation alone minus weight decay + dropout, test accuracy > 0", " pp", ".2f"),
           C("explicit_on_top", "augmentation alone minus augmentation + wd + dropout, + 1 pp, > 0 (adding them "
             "gains < 1 pp)", " pp", ".2f")],
          _n._plot_augmentation),
    Claim("bn_smoothness", "Batch norm makes the loss landscape smoother: the loss and its gradient change less "
          "along the gradient direction.",
          "Santurkar, Tsipras, Ilyas & Madry 2018 (1805.11604) fig. 4",
          "5-layer CNN with and without BN, SGD lr 0.1 (momentum 0.9) for 100 steps; every 25 steps, on a fixed "
          "batch of 256, the loss and gradient at w - eta g for eta = 0.05..0.4", _n.bn_smoothness,
          [C("loss_range", "median over checkpoints of log10(loss range without BN / with BN) > 0", "", ".2f"),
           C("grad_change", "median of log10(max gradient change without BN / with BN) > 0", "", ".2f")],
          _n._plot_bn_smoothness, panels=2, varies=("model.norm",)),
    Claim("batch_size_generalization", "Smaller batches generalize better but converge more slowly.",
          "notes: weight update / batch size; Keskar et al. 2017 (1609.04836)",
          "3-layer CNN, SGD lr 0.02 momentum 0.9, batch 16 vs 256 for 3 epochs on 3k images: test accuracy against "
          "steps and wall time", _n.batch_size_generalization,
          [C("generalizes", "after the same epochs, batch 16's test accuracy minus batch 256's > 0", " pp", ".2f"),
           C("slower_per_step", "at batch 256's last step, its accuracy minus batch 16's at that step > 0", " pp",
             ".2f"),
           C("slower_wall", "log10 of the wall time per epoch, batch 16 / batch 256, > 0", "", ".2f")],
          _n._plot_batch_size, panels=2),
    Claim("newton_saddle", "Newton's method is attracted to saddle points; saddle-free Newton is not.",
          "notes: weight update / second order; Dauphin et al. 2014 (1406.2572)",
          "2-4-1 tanh network (no biases) on a teacher's targets, started near the saddle at 0; damped Newton and "
          "saddle-free Newton (traintricks.optim.second_order), 30 steps of lr 1", _n.newton_saddle,
          [C("loss", "log10(Newton's final loss / saddle-free's) - log10 2 > 0", "", ".2f"),
           C("saddle", "at Newton's end, -lambda_min / max|lambda| of the Hessian - 0.01 > 0 (a saddle)", "", ".3f")],
          _n._plot_newton, takes_data=False, takes_model=False, task=None, images=False),
    Claim("huber_outliers", "The Huber loss is less thrown by outliers than L2.",
          "notes: losses; Huber 1964",
          "linear regression (10 features, 400 points) with 0-20% of the targets offset by +10..30; L2 vs Huber "
          "(delta 1), full-batch L-BFGS; test RMSE on 1000 noisy, outlier-free points", _n.huber_outliers,
          [C("rmse", "with 10% outliers, log10(L2's test RMSE / Huber's) > 0", "", ".2f"),
           C("clean", "without outliers, Huber's RMSE within 5% of L2's: 0.02 - log10(Huber's / L2's) > 0", "",
             ".3f")],
          _n._plot_huber, takes_data=False, takes_model=False, task=None, images=False),
    Claim("aux_heads_probe", "Auxiliary heads strengthen earlier features.",
          "notes: losses / deep supervision; Lee et al. 2015 (1409.5185), Szegedy et al. 2015 (1409.4842)",
          "pre-activation ResNet (3 stages of 1 block), 2 epochs on 3k images with and without an auxiliary head "
          "(weight 0.3) after stage 0; a linear probe on stage 0's pooled features (fit on the 3k, tested on 5k)",
          _n.aux_heads_probe,
          [C("probe", "linear-probe accuracy on stage 0, with minus without the head > 0", " pp", ".2f")],
          _n._plot_aux, takes_model=False),
]}


def run_claim(name: str, lab: Lab) -> dict:
    """Run claim ``name`` over ``lab.seeds`` seeds and ``lab.precisions``; write ``NAME.png`` and ``NAME.json``
    under ``lab.out``; return the verdict (``verdict``, ``holds``, ``summary``, ``precisions``...). Raises
    ``KeyError`` for an unknown name, :class:`LabError` for ``--set`` the claim cannot run on."""
    if name not in CLAIMS:
        raise KeyError(f"unknown claim {name!r}; choose from: {', '.join(CLAIMS)}")
    return _run(CLAIMS[name], lab)
