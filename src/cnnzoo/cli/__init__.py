"""The `cnnzoo` command line."""
