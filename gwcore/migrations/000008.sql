-- One row per crontab entry, so the scheduler knows when each last ran.
create table :GW_SCHEMA.known_crontabs (
  identifier text not null primary key,
  known_since timestamptz not null,
  last_execution timestamptz
);
alter table :GW_SCHEMA.known_crontabs enable row level security;
