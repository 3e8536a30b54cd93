# For a GPU box without internet, once, before the other scripts; SOURCE it (it exports
# CIFAR10_DIR):
#   WHEELS=DIR CIFAR10_ARCHIVE="FILE..." [CIFAR10_DIR=DIR] source scripts/gpu_prepare.sh
# each variable optional:
#   WHEELS            wheels from a connected machine (pip download -r requirements.txt -d DIR)
#   CIFAR10_ARCHIVE   a .tar.xz holding cifar10_train.npz + cifar10_test.npz (and optionally
#                     SHA256SUMS), or its parts, joined in the order given
#   CIFAR10_DIR       where the data is or goes (default: $HOME/cifar10)
# Installs what requirements.txt lists, unpacks the data, and checks what the GPU runs need: a GPU
# torch can see, and for --compile a C compiler and Python's headers (Triton builds its kernels).
# A failing step says what failed and returns: the shell stays open (no `set -e` in a sourced file).
_gpu_prepare() {
  if [ -n "${WHEELS:-}" ]; then
    python3 -m pip install -q --no-index --find-links "$WHEELS" -r requirements.txt \
      || { echo "gpu_prepare: pip could not install requirements.txt from $WHEELS" >&2; return 1; }
  fi
  export CIFAR10_DIR=${CIFAR10_DIR:-$HOME/cifar10}
  if [ ! -f "$CIFAR10_DIR/cifar10_test.npz" ] && [ ! -d "$CIFAR10_DIR/cifar-10-batches-py" ] \
      && [ -z "${CIFAR10_ARCHIVE:-}" ]; then  # a box with internet may still download it
    echo "gpu_prepare: no CIFAR-10 in $CIFAR10_DIR and no archive given (usage: WHEELS=DIR" \
      "CIFAR10_ARCHIVE=\"FILE...\" [CIFAR10_DIR=DIR] source scripts/gpu_prepare.sh)" >&2
  elif [ ! -f "$CIFAR10_DIR/cifar10_test.npz" ] && [ -n "${CIFAR10_ARCHIVE:-}" ]; then
    mkdir -p "$CIFAR10_DIR" || return 1
    # shellcheck disable=SC2086
    cat $CIFAR10_ARCHIVE | xz -d | tar x -C "$CIFAR10_DIR" \
      || { echo "gpu_prepare: could not unpack $CIFAR10_ARCHIVE" >&2; return 1; }
    if [ -f "$CIFAR10_DIR/SHA256SUMS" ]; then
      (cd "$CIFAR10_DIR" && sha256sum -c --quiet SHA256SUMS) \
        || { echo "gpu_prepare: checksums differ in $CIFAR10_DIR" >&2; return 1; }
    fi
  fi
  python3 -c "import torch, ignite; print(torch.__version__, ignite.__version__)" \
    || { echo "gpu_prepare: torch or pytorch-ignite does not import" >&2; return 1; }
  python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
    || { echo "gpu_prepare: torch sees no GPU (check nvidia-smi and the driver's CUDA version)" >&2
         return 1; }
  python3 -c "import torch; print('GPU', torch.cuda.get_device_name(),
      'compute capability', torch.cuda.get_device_capability())"
  command -v "${CC:-cc}" > /dev/null && python3 -c "import sysconfig, os, sys;
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
    || echo "gpu_prepare: no C compiler or Python.h: --compile will fail; eager runs are fine" >&2
  return 0
}
_gpu_prepare
