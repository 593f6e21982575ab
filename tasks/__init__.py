"""seqio task definitions (placeholder).

No tasks are registered yet; GLUE/SuperGLUE tasks come in a later issue.
"""
