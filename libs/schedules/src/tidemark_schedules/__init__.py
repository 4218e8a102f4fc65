"""The rules of schedules as plain functions (no I/O): presets and fire times
(``cron``), validation of a schedule body (``validation``), retention (``retention``)
and the ids derived from a schedule (``ids``). The gateway and the scheduler share them,
so a preview and an enforcement, or a shown and an actual next fire, never disagree."""
