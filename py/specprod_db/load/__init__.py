"""The load pipeline: plan, tasks on worker ranks, the writer, finalize."""
