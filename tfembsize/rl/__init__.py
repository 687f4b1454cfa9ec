"""Reinforcement-learning building blocks that know nothing of embeddings.

Arrays in, typed results out: `TD3Agent` (twin critics, target networks, delayed actor),
`ReplayBuffer` (a ring of transitions saved incrementally) and `ReinforcePolicy` (a REINFORCE
policy over a binary keep/grow action, with a compiled update).
"""

from tfembsize.rl.reinforce import (
    ReinforcePolicy,
    ReinforceUpdate,
    ReinforceUpdateTensors,
)
from tfembsize.rl.replay_buffer import ReplayBuffer, Transitions
from tfembsize.rl.td3 import TD3Agent, UpdateInfo

__all__ = [
    "ReinforcePolicy",
    "ReinforceUpdate",
    "ReinforceUpdateTensors",
    "ReplayBuffer",
    "TD3Agent",
    "Transitions",
    "UpdateInfo",
]
