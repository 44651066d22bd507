"""Releases in waves: the plan's waves (waves.py), its gates (gates.py), the state machine that
moves a rollout on (machine.py), where rollouts are kept (store.py) and the thread that drives
them against the fleet (driver.py). The evaluation runner (evaluation.py) measures the answers
of a wave's nodes through the front door."""
