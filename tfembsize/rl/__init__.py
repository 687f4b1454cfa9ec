"""Reinforcement-learning building blocks that know nothing of embeddings.

Arrays in, typed results out: `TD3Agent` (twin critics, target networks, delayed actor) and
`ReplayBuffer` (a ring of transitions saved incrementally).
"""

from tfembsize.rl.replay_buffer import ReplayBuffer, Transitions
from tfembsize.rl.td3 import TD3Agent, UpdateInfo

__all__ = ["ReplayBuffer", "TD3Agent", "Transitions", "UpdateInfo"]
