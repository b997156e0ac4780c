"""The application layer: configs to typed settings to runs (experiment, runner, checkpoints,
processes, CLI). Above the learners; nothing below imports it."""
