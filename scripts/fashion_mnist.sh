#!/usr/bin/env bash
# Make sure Fashion-MNIST is on this machine: $TRAINTRICKS_DATA, or Debian's dataset-fashion-mnist package.
# Usage: scripts/fashion_mnist.sh [--optional]   (--optional: warn instead of failing when it cannot be had)
set -uo pipefail
dir=/usr/share/datasets/fashion-mnist
have() { ls "$1"/train-images-idx3-ubyte* >/dev/null 2>&1; }
if [ -n "${TRAINTRICKS_DATA:-}" ] && { have "$TRAINTRICKS_DATA" || have "$TRAINTRICKS_DATA/fashion-mnist"; }; then exit 0; fi
have "$dir" && exit 0
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
    echo "Fashion-MNIST not found; installing Debian's dataset-fashion-mnist..." >&2
    $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }
    have "$dir" && exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is not installed and could not be installed here. Either
  - apt-get install dataset-fashion-mnist   (Debian/Ubuntu; puts it in $dir), or
  - put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and
    t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist) in a directory
    and export TRAINTRICKS_DATA=that/directory (or pass --set data.root=that/directory).
MSG
[ "${1:-}" = "--optional" ] && exit 0
exit 1
