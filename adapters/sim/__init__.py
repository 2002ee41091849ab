"""Simulated devices with real dynamics, for the demo, local trials, tests and benchmarks.

Only the composition root (agent.app), the demo (agent.demo), tests and benches import this
group; production drivers never do.
"""
