--! breaking: jobs without a queue run in parallel
alter table :GW_SCHEMA.jobs alter column queue_name drop not null;

create or replace function :GW_SCHEMA.add_job(
  identifier text,
  payload json = '{}',
  queue_name text = null,
  run_at timestamptz = now(),
  max_attempts int = 25,
  job_key text = null
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  result :GW_SCHEMA.jobs;
begin
  if job_key is not null then
    insert into :GW_SCHEMA.jobs as j
      (task_identifier, payload, queue_name, run_at, max_attempts, key)
    values
      (add_job.identifier, add_job.payload, add_job.queue_name, add_job.run_at,
       add_job.max_attempts, add_job.job_key)
    on conflict (key) do update
      set task_identifier = excluded.task_identifier,
          payload = excluded.payload,
          queue_name = excluded.queue_name,
          max_attempts = excluded.max_attempts,
          run_at = excluded.run_at,
          attempts = 0,
          last_error = null
      where j.locked_at is null
    returning * into result;

    if not (result is null) then
      return result;
    end if;

    update :GW_SCHEMA.jobs j
       set key = null, attempts = j.max_attempts
     where j.key = add_job.job_key;
  end if;

  insert into :GW_SCHEMA.jobs
    (task_identifier, payload, queue_name, run_at, max_attempts, key)
  values
    (add_job.identifier, add_job.payload, add_job.queue_name, add_job.run_at,
     add_job.max_attempts, add_job.job_key)
  returning * into result;

  return result;
end;
$$;

-- A job is runnable when neither it nor its queue (if it has one) is locked.
create or replace function :GW_SCHEMA.get_job(
  worker_id text,
  task_identifiers text[] = null,
  job_expiry interval = interval '4 hours'
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  picked_id bigint;
  picked_queue text;
  started timestamptz := now();
  result :GW_SCHEMA.jobs;
begin
  if worker_id is null or length(worker_id) < 10 then
    raise exception 'invalid worker id';
  end if;

  select j.queue_name, j.id
    into picked_queue, picked_id
    from :GW_SCHEMA.jobs j
   where (j.locked_at is null or j.locked_at < started - job_expiry)
     and (
       j.queue_name is null
       or exists (
         select 1
           from :GW_SCHEMA.job_queues q
          where q.queue_name = j.queue_name
            and (q.locked_at is null or q.locked_at < started - job_expiry)
            for update skip locked
       )
     )
     and j.run_at <= started
     and j.attempts < j.max_attempts
     and (task_identifiers is null or j.task_identifier = any(task_identifiers))
   order by j.priority, j.run_at, j.id
   limit 1
   for update skip locked;

  if picked_id is null then
    return null;
  end if;

  if picked_queue is not null then
    update :GW_SCHEMA.job_queues q
       set locked_by = worker_id, locked_at = started
     where q.queue_name = picked_queue;
  end if;

  update :GW_SCHEMA.jobs j
     set attempts = j.attempts + 1, locked_by = worker_id, locked_at = started
   where j.id = picked_id
  returning * into result;

  return result;
end;
$$;

create or replace function :GW_SCHEMA.fail_job(worker_id text, job_id bigint, error_message text)
returns :GW_SCHEMA.jobs
language plpgsql volatile strict as $$
declare
  result :GW_SCHEMA.jobs;
begin
  update :GW_SCHEMA.jobs j
     set last_error = error_message,
         run_at = greatest(now(), j.run_at) + (exp(least(j.attempts, 10))::text || ' seconds')::interval,
         locked_by = null,
         locked_at = null
   where j.id = job_id and j.locked_by = worker_id
  returning * into result;

  if result.queue_name is not null then
    update :GW_SCHEMA.job_queues q
       set locked_by = null, locked_at = null
     where q.queue_name = result.queue_name and q.locked_by = worker_id;
  end if;

  return result;
end;
$$;

create or replace function :GW_SCHEMA.complete_job(worker_id text, job_id bigint)
returns :GW_SCHEMA.jobs
language plpgsql as $$
declare
  result :GW_SCHEMA.jobs;
begin
  delete from :GW_SCHEMA.jobs j where j.id = job_id returning * into result;

  if result.queue_name is not null then
    update :GW_SCHEMA.job_queues q
       set locked_by = null, locked_at = null
     where q.queue_name = result.queue_name and q.locked_by = worker_id;
  end if;

  return result;
end;
$$;

-- The queue counters ignore jobs without a queue.
drop trigger _500_increase_job_queue_count on :GW_SCHEMA.jobs;
drop trigger _500_decrease_job_queue_count on :GW_SCHEMA.jobs;
drop trigger _500_increase_job_queue_count_update on :GW_SCHEMA.jobs;
drop trigger _500_decrease_job_queue_count_update on :GW_SCHEMA.jobs;

create trigger _500_increase_job_queue_count
  after insert on :GW_SCHEMA.jobs
  for each row when (new.queue_name is not null)
  execute procedure :GW_SCHEMA.jobs__increase_job_queue_count();
create trigger _500_decrease_job_queue_count
  after delete on :GW_SCHEMA.jobs
  for each row when (old.queue_name is not null)
  execute procedure :GW_SCHEMA.jobs__decrease_job_queue_count();
create trigger _500_increase_job_queue_count_update
  after update of queue_name on :GW_SCHEMA.jobs
  for each row when (new.queue_name is distinct from old.queue_name and new.queue_name is not null)
  execute procedure :GW_SCHEMA.jobs__increase_job_queue_count();
create trigger _500_decrease_job_queue_count_update
  after update of queue_name on :GW_SCHEMA.jobs
  for each row when (new.queue_name is distinct from old.queue_name and old.queue_name is not null)
  execute procedure :GW_SCHEMA.jobs__decrease_job_queue_count();
