"""The one rich console kdrun prints to."""

from rich.console import Console

console = Console()
