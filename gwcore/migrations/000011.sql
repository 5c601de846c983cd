--! breaking: jobs refer to tasks and queues by id, and the old tables are rebuilt
lock table :GW_SCHEMA.jobs, :GW_SCHEMA.job_queues in access exclusive mode;

-- Rebuilding the tables would lose the locks of running jobs, so stop here while any job holds
-- a lock younger than 4 hours. The runner recognises this error by its SQLSTATE 22012.
do $$
begin
  if exists (
    select 1 from :GW_SCHEMA.jobs j
     where j.locked_at is not null and j.locked_at > now() - interval '4 hours'
  ) then
    raise exception 'locked jobs present; stop all workers and unlock all jobs before migrating'
      using errcode = 'division_by_zero';
  end if;
end
$$;

alter table :GW_SCHEMA.jobs
  alter column attempts type int2,
  alter column max_attempts type int2,
  alter column priority type int2;

drop function :GW_SCHEMA.complete_job(text, bigint);
drop function :GW_SCHEMA.fail_job(text, bigint, text);
drop function :GW_SCHEMA.get_job(text, text[], interval, text[], timestamptz);

drop trigger _900_notify_worker on :GW_SCHEMA.jobs;
drop function :GW_SCHEMA.add_job(text, json, text, timestamptz, int, text, int, text[], text);
drop function :GW_SCHEMA.complete_jobs(bigint[]);
drop function :GW_SCHEMA.permanently_fail_jobs(bigint[], text);
drop function :GW_SCHEMA.remove_job(text);
drop function :GW_SCHEMA.reschedule_jobs(bigint[], timestamptz, int, int, int);
drop function :GW_SCHEMA.tg_jobs__notify_new_jobs();

alter table :GW_SCHEMA.jobs rename to jobs_legacy;
alter table :GW_SCHEMA.job_queues rename to job_queues_legacy;

-- The legacy tables still own the names jobs_pkey, jobs_key_key, jobs_id_seq and
-- job_queues_pkey, hence the "1" suffixes. graphile-worker's tables carry the same names.
create table :GW_SCHEMA.job_queues (
  id int generated always as identity (sequence name :GW_SCHEMA.job_queues_id_seq),
  queue_name text not null,
  locked_at timestamptz,
  locked_by text,
  is_available boolean generated always as (locked_at is null) stored not null,
  constraint job_queues_pkey1 primary key (id),
  constraint job_queues_queue_name_key unique (queue_name),
  constraint job_queues_queue_name_check check (length(queue_name) <= 128)
);
alter table :GW_SCHEMA.job_queues enable row level security;

create table :GW_SCHEMA.tasks (
  id int generated always as identity (sequence name :GW_SCHEMA.tasks_id_seq),
  identifier text not null,
  constraint tasks_pkey primary key (id),
  constraint tasks_identifier_key unique (identifier),
  constraint tasks_identifier_check check (length(identifier) <= 128)
);
alter table :GW_SCHEMA.tasks enable row level security;

-- job_queue_id and task_id have no foreign keys, which keeps inserts cheap.
create table :GW_SCHEMA.jobs (
  id bigint generated always as identity (sequence name :GW_SCHEMA.jobs_id_seq1),
  job_queue_id int,
  task_id int not null,
  payload json not null default '{}'::json,
  priority smallint not null default 0,
  run_at timestamptz not null default now(),
  attempts smallint not null default 0,
  max_attempts smallint not null default 25,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  key text,
  locked_at timestamptz,
  locked_by text,
  revision int not null default 0,
  flags jsonb,
  is_available boolean generated always as (locked_at is null and attempts < max_attempts) stored not null,
  constraint jobs_pkey1 primary key (id),
  constraint jobs_key_key1 unique (key),
  constraint jobs_key_check check (length(key) > 0 and length(key) <= 512),
  constraint jobs_max_attempts_check check (max_attempts >= 1)
);
alter table :GW_SCHEMA.jobs enable row level security;

create index jobs_main_index on :GW_SCHEMA.jobs using btree (priority, run_at)
  include (id, task_id, job_queue_id)
  where is_available = true;

create index jobs_no_queue_index on :GW_SCHEMA.jobs using btree (priority, run_at)
  include (id, task_id)
  where is_available = true and job_queue_id is null;

create type :GW_SCHEMA.job_spec as (
  identifier text,
  payload json,
  queue_name text,
  run_at timestamptz,
  max_attempts int,
  job_key text,
  priority int,
  flags text[]
);

-- Inserts many jobs at once; see add_job for how a job_key that exists already is handled.
create function :GW_SCHEMA.add_jobs(
  specs :GW_SCHEMA.job_spec[],
  job_key_preserve_run_at boolean default false
) returns setof :GW_SCHEMA.jobs
language plpgsql as $$
begin
  insert into :GW_SCHEMA.tasks (identifier)
  select distinct s.identifier from unnest(specs) s
  on conflict do nothing;

  insert into :GW_SCHEMA.job_queues (queue_name)
  select distinct s.queue_name from unnest(specs) s
   where s.queue_name is not null
  on conflict do nothing;

  -- A job of the same key that is running or out of attempts keeps running, but loses its key
  -- and its retries, so the insert below creates a new job.
  update :GW_SCHEMA.jobs j
     set key = null, attempts = j.max_attempts, updated_at = now()
    from unnest(specs) s
   where s.job_key is not null
     and j.key = s.job_key
     and j.is_available is not true;

  return query
  insert into :GW_SCHEMA.jobs as j
    (job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags)
  select
    q.id,
    t.id,
    coalesce(s.payload, '{}'::json),
    coalesce(s.run_at, now()),
    coalesce(s.max_attempts, 25),
    s.job_key,
    coalesce(s.priority, 0),
    (select jsonb_object_agg(f.name, true) from unnest(s.flags) as f(name))
  from unnest(specs) s
  join :GW_SCHEMA.tasks t on t.identifier = s.identifier
  left join :GW_SCHEMA.job_queues q on q.queue_name = s.queue_name
  on conflict (key) do update
    set job_queue_id = excluded.job_queue_id,
        task_id = excluded.task_id,
        payload = excluded.payload,
        max_attempts = excluded.max_attempts,
        run_at = case
          when job_key_preserve_run_at is true and j.attempts = 0 then j.run_at
          else excluded.run_at
        end,
        priority = excluded.priority,
        revision = j.revision + 1,
        flags = excluded.flags,
        attempts = 0,
        last_error = null,
        updated_at = now()
    where j.locked_at is null
  returning *;
end;
$$;

-- The admin functions skip jobs that a worker holds, unless its lock is over 4 hours old.
create function :GW_SCHEMA.complete_jobs(job_ids bigint[]) returns setof :GW_SCHEMA.jobs
language sql as $$
  delete from :GW_SCHEMA.jobs
   where id = any(job_ids)
     and (locked_at is null or locked_at < now() - interval '4 hours')
  returning *;
$$;

create function :GW_SCHEMA.permanently_fail_jobs(
  job_ids bigint[],
  error_message text default null::text
) returns setof :GW_SCHEMA.jobs
language sql as $$
  update :GW_SCHEMA.jobs
     set last_error = coalesce(error_message, 'Manually marked as failed'),
         attempts = max_attempts,
         updated_at = now()
   where id = any(job_ids)
     and (locked_at is null or locked_at < now() - interval '4 hours')
  returning *;
$$;

create function :GW_SCHEMA.remove_job(job_key text) returns :GW_SCHEMA.jobs
language plpgsql strict as $$
declare
  result :GW_SCHEMA.jobs;
begin
  delete from :GW_SCHEMA.jobs j
   where j.key = remove_job.job_key
     and (j.locked_at is null or j.locked_at < now() - interval '4 hours')
  returning * into result;

  if not (result is null) then
    return result;
  end if;

  -- The job is running: strip its key and retries so it does not run again after this attempt.
  update :GW_SCHEMA.jobs j
     set key = null, attempts = j.max_attempts, updated_at = now()
   where j.key = remove_job.job_key
  returning * into result;

  return result;
end;
$$;

create function :GW_SCHEMA.reschedule_jobs(
  job_ids bigint[],
  run_at timestamptz default null::timestamptz,
  priority int default null::int,
  attempts int default null::int,
  max_attempts int default null::int
) returns setof :GW_SCHEMA.jobs
language sql as $$
  update :GW_SCHEMA.jobs j
     set run_at = coalesce(reschedule_jobs.run_at, j.run_at),
         priority = coalesce(reschedule_jobs.priority, j.priority),
         attempts = coalesce(reschedule_jobs.attempts, j.attempts),
         max_attempts = coalesce(reschedule_jobs.max_attempts, j.max_attempts),
         updated_at = now()
   where j.id = any(job_ids)
     and (j.locked_at is null or j.locked_at < now() - interval '4 hours')
  returning *;
$$;

create function :GW_SCHEMA.tg_jobs__after_insert() returns trigger
language plpgsql as $$
begin
  perform pg_notify('jobs:insert', '');
  return new;
end;
$$;

create trigger _900_after_insert
  after insert on :GW_SCHEMA.jobs
  for each statement execute procedure :GW_SCHEMA.tg_jobs__after_insert();

-- Without a job_key, or in replace and preserve_run_at mode, add_job delegates to add_jobs.
create function :GW_SCHEMA.add_job(
  identifier text,
  payload json default null::json,
  queue_name text default null::text,
  run_at timestamptz default null::timestamptz,
  max_attempts int default null::int,
  job_key text default null::text,
  priority int default null::int,
  flags text[] default null::text[],
  job_key_mode text default 'replace'::text
) returns :GW_SCHEMA.jobs
language plpgsql as $$
declare
  result :GW_SCHEMA.jobs;
begin
  if job_key is null or job_key_mode is null or job_key_mode in ('replace', 'preserve_run_at') then
    select * into result
      from :GW_SCHEMA.add_jobs(
        array[cast(row(
          add_job.identifier, add_job.payload, add_job.queue_name, add_job.run_at,
          add_job.max_attempts, add_job.job_key, add_job.priority, add_job.flags
        ) as :GW_SCHEMA.job_spec)],
        add_job.job_key_mode = 'preserve_run_at'
      )
     limit 1;
    return result;
  elsif job_key_mode = 'unsafe_dedupe' then
    insert into :GW_SCHEMA.tasks (identifier) values (add_job.identifier)
    on conflict do nothing;

    if add_job.queue_name is not null then
      insert into :GW_SCHEMA.job_queues (queue_name) values (add_job.queue_name)
      on conflict do nothing;
    end if;

    -- Keeps the existing job even when it is running, so a change that happens after it
    -- started is never acted on. The revision bump makes the row come back from "returning".
    insert into :GW_SCHEMA.jobs as j
      (job_queue_id, task_id, payload, run_at, max_attempts, key, priority, flags)
    select
      q.id,
      t.id,
      coalesce(add_job.payload, '{}'::json),
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts, 25),
      add_job.job_key,
      coalesce(add_job.priority, 0),
      (select jsonb_object_agg(f.name, true) from unnest(add_job.flags) as f(name))
    from :GW_SCHEMA.tasks t
    left join :GW_SCHEMA.job_queues q on q.queue_name = add_job.queue_name
    where t.identifier = add_job.identifier
    on conflict (key) do update
      set revision = j.revision + 1, updated_at = now()
    returning * into result;
    return result;
  else
    raise exception 'Invalid job_key_mode value, expected ''replace'', ''preserve_run_at'' or ''unsafe_dedupe''.' using errcode = 'GWBKM';
  end if;
end;
$$;

-- Move the queues, tasks and jobs over, then drop the old tables.
insert into :GW_SCHEMA.job_queues (queue_name)
select distinct l.queue_name from :GW_SCHEMA.jobs_legacy l
 where l.queue_name is not null
on conflict do nothing;

insert into :GW_SCHEMA.tasks (identifier)
select distinct l.task_identifier from :GW_SCHEMA.jobs_legacy l
on conflict do nothing;

insert into :GW_SCHEMA.jobs (
  job_queue_id, task_id, payload, priority, run_at, attempts, max_attempts, last_error,
  created_at, updated_at, key, revision, flags
)
select
  q.id, t.id, l.payload, l.priority, l.run_at, l.attempts, l.max_attempts, l.last_error,
  l.created_at, l.updated_at, l.key, l.revision, l.flags
from :GW_SCHEMA.jobs_legacy l
join :GW_SCHEMA.tasks t on t.identifier = l.task_identifier
left join :GW_SCHEMA.job_queues q on q.queue_name = l.queue_name;

drop table :GW_SCHEMA.jobs_legacy;
drop table :GW_SCHEMA.job_queues_legacy;
