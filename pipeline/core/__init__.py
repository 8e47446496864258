"""The small shared core: folders and files, run state, settings, model specs, errors, names."""
