-- Job revisions and flags; get_job can skip jobs that carry a forbidden flag.
alter table :GW_SCHEMA.jobs add column revision int not null default 0;
alter table :GW_SCHEMA.jobs add column flags jsonb default null;

drop function :GW_SCHEMA.add_job(text, json, text, timestamptz, int, text, int);

-- flags arrive as text[] and are stored as a jsonb object {"flag": true, ...}.
create function :GW_SCHEMA.add_job(
  identifier text,
  payload json = null,
  queue_name text = null,
  run_at timestamptz = null,
  max_attempts int = null,
  job_key text = null,
  priority int = null,
  flags text[] = null
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  flag_object jsonb;
  result :GW_SCHEMA.jobs;
begin
  if length(identifier) > 128 then
    raise exception 'Task identifier is too long (max length: 128).' using errcode = 'GWBID';
  end if;
  if queue_name is not null and length(queue_name) > 128 then
    raise exception 'Job queue name is too long (max length: 128).' using errcode = 'GWBQN';
  end if;
  if job_key is not null and length(job_key) > 512 then
    raise exception 'Job key is too long (max length: 512).' using errcode = 'GWBJK';
  end if;
  if max_attempts < 1 then
    raise exception 'Job maximum attempts must be at least 1' using errcode = 'GWBMA';
  end if;

  select jsonb_object_agg(f.name, true) into flag_object from unnest(add_job.flags) as f(name);

  if job_key is not null then
    insert into :GW_SCHEMA.jobs as j
      (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
    values (
      add_job.identifier,
      coalesce(add_job.payload, '{}'::json),
      add_job.queue_name,
      coalesce(add_job.run_at, now()),
      coalesce(add_job.max_attempts, 25),
      add_job.job_key,
      coalesce(add_job.priority, 0),
      flag_object
    )
    on conflict (key) do update
      set task_identifier = excluded.task_identifier,
          payload = excluded.payload,
          queue_name = excluded.queue_name,
          max_attempts = excluded.max_attempts,
          run_at = excluded.run_at,
          priority = excluded.priority,
          revision = j.revision + 1,
          flags = excluded.flags,
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
    (task_identifier, payload, queue_name, run_at, max_attempts, key, priority, flags)
  values (
    add_job.identifier,
    coalesce(add_job.payload, '{}'::json),
    add_job.queue_name,
    coalesce(add_job.run_at, now()),
    coalesce(add_job.max_attempts, 25),
    add_job.job_key,
    coalesce(add_job.priority, 0),
    flag_object
  )
  returning * into result;

  return result;
end;
$$;

drop function :GW_SCHEMA.get_job(text, text[], interval);

create function :GW_SCHEMA.get_job(
  worker_id text,
  task_identifiers text[] = null,
  job_expiry interval = interval '4 hours',
  forbidden_flags text[] = null
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
     and (forbidden_flags is null or (j.flags ?| forbidden_flags) is not true)
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
