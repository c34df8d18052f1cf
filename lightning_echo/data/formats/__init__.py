"""Dataset file formats: readers and writers of MNIST idx, LIBSVM text and CIFAR-10 python pickles."""
