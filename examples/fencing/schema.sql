-- The fenced store of examples/fencing (docs/fencing.md). Applied by the writer at start
-- (idempotent, under an advisory lock), or by hand: psql "$DSN" -f schema.sql.

-- One row per lock: the highest fencing token that has written. A write with a lower
-- token is refused.
CREATE TABLE IF NOT EXISTS fence (
  name  text   PRIMARY KEY,
  token bigint NOT NULL
);

-- The data: one row per accepted unit of work, tagged with the writer's token. started is
-- when the writer began the unit (before its work), ended when the row was written
-- (inside the fence's row lock, so ids are in the order writes passed the fence).
CREATE TABLE IF NOT EXISTS writes (
  id      bigserial   PRIMARY KEY,
  lock    text        NOT NULL,
  token   bigint      NOT NULL,
  writer  text        NOT NULL,
  seq     bigint      NOT NULL,
  started timestamptz NOT NULL,
  ended   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Writes the fence refused, recorded by the writer after the refusal: fence_token is the
-- token that had written by then.
CREATE TABLE IF NOT EXISTS refusals (
  id          bigserial   PRIMARY KEY,
  lock        text        NOT NULL,
  token       bigint      NOT NULL,
  writer      text        NOT NULL,
  seq         bigint      NOT NULL,
  started     timestamptz NOT NULL,
  fence_token bigint      NOT NULL,
  refused     timestamptz NOT NULL DEFAULT clock_timestamp()
);
