"""Hooks and events: how the server tells an application what happens and lets it decide.

A Python hooks module (`--hooks-module`) is a module with functions named after the hook
points (`pre_access`, `pre_create`, `pre_terminate`), each taking the event (a dict, the
same JSON a webhook gets) and returning None (go on), an answer dict, or raising Reject.
docs/hooks.md describes every hook, its payload and its answer.
"""

from ..core.hooks import HookRejected as Reject

__all__ = ["Reject"]
