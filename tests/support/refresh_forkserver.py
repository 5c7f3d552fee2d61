"""Imported by the multi-process refresh test's fork server only: warms what children share.

Importing it has a side effect on purpose: a fork server runs nothing but imports
(``set_forkserver_preload``), and what it computes is inherited by every child it forks.
"""

from tests.support.refresh_workers import warm_up_fork_server

warm_up_fork_server()
