"""Many runs at once: sweeps over one cache (sweep), Slurm job arrays (executors), reports
(report) and intervals over seeds (stats). May import every stage up to evaluation; never
teachers or extraction."""
