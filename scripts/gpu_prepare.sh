#!/usr/bin/env bash
# For a GPU box without internet, once, before the other scripts: install what requirements.txt lists from a
# folder of wheels, and unpack CIFAR-10 from an archive.
#   WHEELS=DIR            wheels made on a connected machine: pip download -r requirements.txt -d DIR
#   CIFAR10_ARCHIVE="F.." a .tar.xz holding cifar10_train.npz + cifar10_test.npz (and optionally SHA256SUMS),
#                         or its parts, joined in the order given
#   source scripts/gpu_prepare.sh      # exports CIFAR10_DIR (default $HOME/cifar10) for the scripts that follow
set -e
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --find-links "$WHEELS" -r requirements.txt
fi
export CIFAR10_DIR=${CIFAR10_DIR:-$HOME/cifar10}
if [ ! -f "$CIFAR10_DIR/cifar10_test.npz" ] && [ -n "${CIFAR10_ARCHIVE:-}" ]; then
  mkdir -p "$CIFAR10_DIR"
  # shellcheck disable=SC2086
  cat $CIFAR10_ARCHIVE | xz -d | tar x -C "$CIFAR10_DIR"
  if [ -f "$CIFAR10_DIR/SHA256SUMS" ]; then (cd "$CIFAR10_DIR" && sha256sum -c --quiet SHA256SUMS); fi
fi
python3 -c "import torch, ignite; print('torch', torch.__version__, 'ignite', ignite.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
set +e
