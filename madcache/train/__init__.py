"""Training a student from cached teacher targets (docs/method.md): config, data, setup, the loop,
checkpoints. Never imports a teacher."""
