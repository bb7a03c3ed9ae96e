"""`cnndsl train`, `eval` and `features`: everything that runs a compiled network.

    settings    the one table of training settings → Config, YAML checks, flags
    sources     the forms of `--data` (torch-free)
    data        data sources (`--data`): digits, mnist:DIR, cifar10:DIR, folder:DIR, ...
    augment     batch augmentation and test-time views
    runtime     device, bf16 / channels_last, DDP process group
    optim       optimisers and learning-rate schedules
    loop        the run itself: data, model, optimiser, epochs, test
    evaluate    loss and top-1 / top-5 of a split
    checkpoint  atomic writes, guarded reads
    progress    the epoch lines and the live bar
    logs        metrics.csv and TensorBoard's event files, from each epoch's record
    curves      a run's metrics.jsonl read back with limits (torch-free; plot, report)
    inference   a checkpoint's model and data for `eval` and `features`
"""
