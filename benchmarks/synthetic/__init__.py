"""The synthetic tasks of the H-LRU / BD-LRU paper: tasks, baseline models, one run, the suite, plots."""
