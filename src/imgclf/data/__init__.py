"""Data: image folders and CIFAR-10 archives in, decoded uint8 arrays and splits out."""
