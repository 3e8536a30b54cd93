#!/usr/bin/env bash
# On the GPU box (no internet): install the carried Ignite wheel and unpack the carried CIFAR-10 once.
#   carry .whl (pytorch_ignite wheel) and .data/cifar10.tar.xz.part-* (see ../shared/cifar10/README.md)
#   source scripts/gpu_prepare.sh        # sets PYTHONPATH and CIFAR10_DIR for the scripts that follow
set -e
if ! python3 -c "import ignite" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export CIFAR10_DIR=${CIFAR10_DIR:-$HOME/cifar}
if [ ! -f "$CIFAR10_DIR/cifar10_test.npz" ]; then
  mkdir -p "$HOME/cifar"
  cp -n .data/cifar10.tar.xz.part-* "$HOME/cifar/" 2>/dev/null || true
  n=$(ls "$HOME"/cifar/cifar10.tar.xz.part-* 2>/dev/null | wc -l)
  if [ "$n" = 3 ]; then
    cat "$HOME"/cifar/cifar10.tar.xz.part-* | xz -d | tar x -C "$HOME/cifar"
    (cd "$HOME/cifar" && sha256sum -c --quiet SHA256SUMS)
  else
    echo "gpu_prepare: $n of 3 CIFAR-10 parts in $HOME/cifar so far" >&2
  fi
fi
python3 -c "import torch, ignite; print('torch', torch.__version__, 'ignite', ignite.__version__, torch.cuda.get_device_name())"
set +e
