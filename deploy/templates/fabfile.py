"""Production tasks: `fab prod db.status`, `fab prod db.upgrade`; environments live in fabric.yaml."""

from deploy.remote_tasks import fab_tasks

namespace = fab_tasks(__file__)
