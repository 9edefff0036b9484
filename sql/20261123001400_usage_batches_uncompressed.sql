-- A stored usage batch is written once and read once (by the worker that records and deletes it),
-- so compressing it is wasted work: pglz on a 1,000-event batch (~330 KB of JSON) made the
-- insert, read and delete of the outbox row take 14.6 ms against 8.3 ms stored out of line
-- uncompressed (measured on the embedded Postgres 16 of this project). lz4 would be as fast but
-- is not built into every Postgres this runs on.
alter table public.usage_batches alter column events set storage external;
