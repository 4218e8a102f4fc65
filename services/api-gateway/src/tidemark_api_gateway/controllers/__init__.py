"""One controller per resource: each translates HTTP into a call of the application layer."""

from tidemark_api_gateway.controllers.alerts import AlertController
from tidemark_api_gateway.controllers.backups import BackupController
from tidemark_api_gateway.controllers.destinations import DestinationController
from tidemark_api_gateway.controllers.environments import EnvironmentController
from tidemark_api_gateway.controllers.pitr import PitrController
from tidemark_api_gateway.controllers.progress import ProgressController
from tidemark_api_gateway.controllers.projects import ProjectController
from tidemark_api_gateway.controllers.restores import RestoreController
from tidemark_api_gateway.controllers.schedules import ScheduleController
from tidemark_api_gateway.controllers.secrets import SecretController
from tidemark_api_gateway.controllers.webhooks import WebhookController

CONTROLLERS = [
    ProjectController,
    EnvironmentController,
    DestinationController,
    SecretController,
    WebhookController,
    ScheduleController,
    PitrController,
    AlertController,
    BackupController,
    ProgressController,
    RestoreController,
]

__all__ = ["CONTROLLERS"]
