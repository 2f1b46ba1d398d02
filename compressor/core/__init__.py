"""The vocabulary every layer shares: model state, passes and their manager, targets, tasks,
recipes, checkpoints, errors. Imports no other layer of mcompress."""
