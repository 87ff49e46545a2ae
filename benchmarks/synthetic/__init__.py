"""The synthetic tasks of the H-LRU / BD-LRU paper: tasks, baseline models, one run, the study presets, the table."""
