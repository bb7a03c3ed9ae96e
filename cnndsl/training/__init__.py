"""`cnndsl train`, `eval` and `features`: everything that runs a compiled network.

    settings    the one table of training settings → Config, YAML checks, flags
    data        data sources (`--data`): digits, mnist:DIR, cifar10:DIR, folder:DIR, ...
    augment     batch augmentation and test-time views
    runtime     device, bf16 / channels_last, DDP process group
    optim       optimisers and learning-rate schedules
    loop        the run itself: data, model, optimiser, epochs, test
    evaluate    loss and top-1 / top-5 of a split
    checkpoint  atomic writes, guarded reads
    progress    the epoch lines and the live bar
    inference   a checkpoint's model and data for `eval` and `features`
"""
