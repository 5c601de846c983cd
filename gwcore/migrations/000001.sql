--! breaking: creates the first job tables
-- Queues serialise their jobs: a worker locks the queue row while it runs one job from it.
create table :GW_SCHEMA.job_queues (
  queue_name text not null primary key,
  job_count int not null,
  locked_at timestamptz,
  locked_by text
);
alter table :GW_SCHEMA.job_queues enable row level security;

create table :GW_SCHEMA.jobs (
  id bigserial primary key,
  queue_name text not null,
  task_identifier text not null,
  payload json not null default '{}'::json,
  priority int not null default 0,
  run_at timestamptz not null default now(),
  attempts int not null default 0,
  max_attempts int not null default 25,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table :GW_SCHEMA.jobs enable row level security;

create index jobs_priority_run_at_id_idx on :GW_SCHEMA.jobs (priority, run_at, id);

-- updated_at moves forward by at least 1 ms on every update, even within one transaction.
create function :GW_SCHEMA.tg__update_timestamp() returns trigger
language plpgsql as $$
begin
  new.updated_at := greatest(now(), old.updated_at + interval '1 millisecond');
  return new;
end;
$$;

create trigger _100_timestamps
  before update on :GW_SCHEMA.jobs
  for each row execute procedure :GW_SCHEMA.tg__update_timestamp();

-- job_queues.job_count counts the jobs of each queue; a queue row goes away with its last job.
create function :GW_SCHEMA.jobs__decrease_job_queue_count() returns trigger
language plpgsql as $$
declare
  remaining int;
begin
  update :GW_SCHEMA.job_queues q
     set job_count = q.job_count - 1
   where q.queue_name = old.queue_name
  returning q.job_count into remaining;

  if remaining <= 0 then
    delete from :GW_SCHEMA.job_queues q
     where q.queue_name = old.queue_name and q.job_count <= 0;
  end if;
  return old;
end;
$$;

create function :GW_SCHEMA.jobs__increase_job_queue_count() returns trigger
language plpgsql as $$
begin
  insert into :GW_SCHEMA.job_queues as q (queue_name, job_count)
  values (new.queue_name, 1)
  on conflict (queue_name) do update set job_count = q.job_count + 1;
  return new;
end;
$$;

create trigger _500_increase_job_queue_count
  after insert on :GW_SCHEMA.jobs
  for each row execute procedure :GW_SCHEMA.jobs__increase_job_queue_count();
create trigger _500_decrease_job_queue_count
  after delete on :GW_SCHEMA.jobs
  for each row execute procedure :GW_SCHEMA.jobs__decrease_job_queue_count();
create trigger _500_increase_job_queue_count_update
  after update of queue_name on :GW_SCHEMA.jobs
  for each row execute procedure :GW_SCHEMA.jobs__increase_job_queue_count();
create trigger _500_decrease_job_queue_count_update
  after update of queue_name on :GW_SCHEMA.jobs
  for each row execute procedure :GW_SCHEMA.jobs__decrease_job_queue_count();

-- Wakes listening workers once per inserting statement.
create function :GW_SCHEMA.tg_jobs__notify_new_jobs() returns trigger
language plpgsql as $$
begin
  perform pg_notify('jobs:insert', '');
  return new;
end;
$$;

create trigger _900_notify_worker
  after insert on :GW_SCHEMA.jobs
  for each statement execute procedure :GW_SCHEMA.tg_jobs__notify_new_jobs();

create function :GW_SCHEMA.add_job(
  identifier text,
  payload json = '{}',
  queue_name text = null,
  run_at timestamptz = now(),
  max_attempts int = 25
) returns :GW_SCHEMA.jobs
language sql as $$
  insert into :GW_SCHEMA.jobs (task_identifier, payload, queue_name, run_at, max_attempts)
  values (identifier, payload, queue_name, run_at, max_attempts)
  returning *;
$$;

-- Picks the next runnable job, locks its queue for worker_id and counts the attempt.
create function :GW_SCHEMA.get_job(
  worker_id text,
  task_identifiers text[] = null,
  job_expiry interval = interval '4 hours'
) returns :GW_SCHEMA.jobs
language plpgsql as $$
declare
  picked_id bigint;
  picked_queue text;
  result :GW_SCHEMA.jobs;
begin
  if worker_id is null or length(worker_id) < 10 then
    raise exception 'invalid worker id';
  end if;

  select q.queue_name, j.id
    into picked_queue, picked_id
    from :GW_SCHEMA.jobs j
    join :GW_SCHEMA.job_queues q on q.queue_name = j.queue_name
   where (q.locked_at is null or q.locked_at < now() - job_expiry)
     and j.run_at <= now()
     and j.attempts < j.max_attempts
     and (task_identifiers is null or j.task_identifier = any(task_identifiers))
   order by j.priority, j.run_at, j.id
   limit 1
   for update of q skip locked;

  if picked_queue is null then
    return null;
  end if;

  update :GW_SCHEMA.job_queues q
     set locked_by = worker_id, locked_at = now()
   where q.queue_name = picked_queue;

  update :GW_SCHEMA.jobs j
     set attempts = j.attempts + 1
   where j.id = picked_id
  returning * into result;

  return result;
end;
$$;

create function :GW_SCHEMA.complete_job(worker_id text, job_id bigint) returns :GW_SCHEMA.jobs
language plpgsql as $$
declare
  result :GW_SCHEMA.jobs;
begin
  delete from :GW_SCHEMA.jobs j where j.id = job_id returning * into result;

  update :GW_SCHEMA.job_queues q
     set locked_by = null, locked_at = null
   where q.queue_name = result.queue_name and q.locked_by = worker_id;

  return result;
end;
$$;

-- Backs off exponentially: exp(attempts) seconds, capped at exp(10).
create function :GW_SCHEMA.fail_job(worker_id text, job_id bigint, error_message text)
returns :GW_SCHEMA.jobs
language plpgsql as $$
declare
  result :GW_SCHEMA.jobs;
begin
  update :GW_SCHEMA.jobs j
     set last_error = error_message,
         run_at = greatest(now(), j.run_at) + (exp(least(j.attempts, 10))::text || ' seconds')::interval
   where j.id = job_id
  returning * into result;

  update :GW_SCHEMA.job_queues q
     set locked_by = null, locked_at = null
   where q.queue_name = result.queue_name and q.locked_by = worker_id;

  return result;
end;
$$;
