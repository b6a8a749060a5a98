"""The supervisor's maintenance services, one small module each (as River's are).

Each service has ``run_once(conn)``, which does its work with its own statement and
returns what it did; the supervisor's periodic round (``round.py``) does the work of
several in ONE round trip (orchwf_maintain), so an idle host costs about one query every
two seconds, and hands each service its part of the answer.

  rescuer.py    claims of dead workers, and of leases that expired, back to the queue
  scheduler.py  retries whose backoff is due (and scheduled starts) into the ready queue
  suspects.py   whether suspects wait for a quarantine worker
  pruner.py     retention: finished history older than --retention, silent process rows
  stats.py      the dashboard's per-minute trends (finishes, queue waits, backlog)
  cron.py       cron schedules: one instance per tick, across every host
  listener.py   the host's one LISTEN connection, which wakes the workers
"""
