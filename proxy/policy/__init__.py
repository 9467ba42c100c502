"""Policy loading and compiling: YAML in, an immutable ``CompiledPolicy`` out."""

from .compiled import CompiledPolicy, ServerRef
from .compiler import compile_file, compile_text, policy_version

__all__ = ["CompiledPolicy", "ServerRef", "compile_file", "compile_text", "policy_version"]
