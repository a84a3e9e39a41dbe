"""Beside the layers: integrations with other frameworks (Lightning), imported only by
users who have them installed; nothing in rnnscope imports this package."""
