"""Production tasks: `fab prod db.status`, `fab prod db.upgrade`; environments live in fabric.yaml."""

from pathlib import Path

from deploy.remote_tasks import collection

namespace = collection(Path(__file__).resolve().parent)
