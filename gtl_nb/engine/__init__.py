"""The async heart of gtl_nb: the loop thread, the pooled HTTP runner and its timeouts, routing,
and the engine that turns a request into one well-formed GTL event stream."""

from gtl_nb.engine.core import Engine
from gtl_nb.engine.http import HttpRunner, Timeouts
from gtl_nb.engine.loop import LoopThread, shared_loop
from gtl_nb.engine.routing import Router, Target

__all__ = ["Engine", "HttpRunner", "LoopThread", "Router", "Target", "Timeouts", "shared_loop"]
