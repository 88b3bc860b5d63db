"""Running workflows on the target: the executor and its parts (deployer, restarter,
keeper of services, launcher of steps, workload, record, working directories, recovery),
preflight and the step runner. Loaded at the first deployment
(:mod:`edgeplane.edge_agent.execution.ondemand`), so an idle agent does not pay for it."""

__all__: list[str] = []
