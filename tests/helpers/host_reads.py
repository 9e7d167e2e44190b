"""Count how often training reads a tensor back to the host (a device sync on a GPU).

Usage: python tests/helpers/host_reads.py {torch|tf|keras} MAX_STEPS [--sync-every-step]

Runs the framework's MNIST recipe (keras: the model.fit one, on Keras 3) in this process (one worker, one
epoch, at most MAX_STEPS steps) and counts every tensor-to-host conversion, in the train steps
and in the whole run, then prints the counts as JSON. PyTorch: a TorchFunctionMode sees .item(),
.tolist(), .numpy(), .cpu() and bool/float/int of a tensor. TensorFlow: every eager tensor's
value is read through ``_EagerTensorBase._numpy`` (.numpy(), float(), bool(), np.asarray),
which is counted.
``--sync-every-step`` adds one such read to every train step: what the count must catch.
Reads made by Keras itself (the innermost caller outside TensorFlow is Keras) are counted apart, as
``keras``: they are not the core's.
Reads made by the stop-signal agreement (``SignalWatch.agreed``) are counted apart, as
``agreement``: it runs on a clock (about four times a second), so its count follows how fast
the machine was, not the code.
"""

from __future__ import annotations

import collections
import json
import sys

FLAGS = ["--epochs", "1", "--batch-size", "8", "--stall-timeout", "0", "--no-progress",
         "--checkpoint-dir", "", "--metrics-file", ""]  # nothing saved, nothing resumed
reads: collections.Counter = collections.Counter()
inside_step = [False]
inside_agreement = [False]


def keras_own() -> bool:
    """Whether the read is Keras's own work: the innermost caller outside TensorFlow is Keras
    (Keras 3's train function checks its iterator's next element every step)."""
    frame = sys._getframe(3)  # the caller of the counted read
    while frame and "/tensorflow/" in frame.f_code.co_filename:
        frame = frame.f_back
    return bool(frame) and "/keras/src/" in frame.f_code.co_filename


def count(name: str) -> None:
    if inside_agreement[0]:
        reads["agreement"] += 1
        return
    if keras_own():
        reads["keras"] += 1
        return
    reads[name] += 1
    if inside_step[0]:
        reads["in_train_step"] += 1


def watch_agreements() -> None:
    from common.faults.preemption import SignalWatch

    agreed = SignalWatch.agreed

    def watched(self, *args, **kwargs):
        inside_agreement[0] = True
        try:
            return agreed(self, *args, **kwargs)
        finally:
            inside_agreement[0] = False

    SignalWatch.agreed = watched


def watch_steps(backend_class, read=None) -> None:
    """Count reads made inside ``backend_class.train_step``; ``read(counters)``: add one."""
    step = backend_class.train_step

    def watched(self, batch):
        inside_step[0] = True
        try:
            counters = step(self, batch)
            if read is not None:
                read(counters)
            return counters
        finally:
            inside_step[0] = False

    backend_class.train_step = watched


def run_torch(steps: int, sync: bool) -> None:
    from torch.overrides import TorchFunctionMode

    from common.frameworks.torch_backend import TorchBackend
    from recipes.pytorch import mnist

    names = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
             "__array__"}

    class CountHostReads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in names:
                count(name)
            return func(*args, **(kwargs or {}))

    watch_steps(TorchBackend, (lambda c: c[0].item()) if sync else None)
    with CountHostReads():
        mnist.main([*FLAGS, "--max-steps", str(steps)])


def run_tf(steps: int, sync: bool, keras: bool = False) -> None:
    from tensorflow.python.framework import ops

    from common.frameworks.tf_backend import TFBackend

    if keras:
        from recipes.tensorflow import keras_mnist as mnist
    else:
        from recipes.tensorflow import mnist

    read = ops._EagerTensorBase._numpy

    def counted(self):
        count("_numpy")
        return read(self)

    ops._EagerTensorBase._numpy = counted
    if keras:
        watch_keras_batches(mnist, steps if sync else 0)
    else:
        watch_steps(TFBackend, (lambda c: c.numpy()) if sync else None)
    mnist.main([*FLAGS, "--max-steps", str(steps)])


def watch_keras_batches(recipe, sync: int) -> None:
    """Count reads made inside ``model.fit``'s batches (between the callback's batch begin and
    end, Keras's own work included); ``sync``: read the batch's loss in each."""
    from common.loop import keras_fit

    callback = keras_fit.TrainerCallback
    begin, end = callback.on_train_batch_begin, callback.on_train_batch_end

    def on_begin(self, batch, logs=None):
        begin(self, batch, logs)
        inside_step[0] = True

    def on_end(self, batch, logs=None):
        if sync and logs:
            float(logs["loss"])
        inside_step[0] = False
        end(self, batch, logs)

    callback.on_train_batch_begin, callback.on_train_batch_end = on_begin, on_end


def main() -> None:
    framework, steps, sync = sys.argv[1], int(sys.argv[2]), "--sync-every-step" in sys.argv
    watch_agreements()
    if framework == "torch":
        run_torch(steps, sync)
    else:
        run_tf(steps, sync, keras=framework == "keras")
    print(json.dumps({"steps": steps, "reads": dict(reads)}))


if __name__ == "__main__":
    main()
