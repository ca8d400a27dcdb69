"""Meta-reinforcement learning: task families of environments, trajectory sampling and the RL learners' shared
parts. The domains that expose these families to ``fewshot train`` live in :mod:`fewshot.domains`."""
