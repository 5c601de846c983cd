-- get_job takes the current time as an argument, so a worker can pass its own clock.
drop function :GW_SCHEMA.get_job(text, text[], interval, text[]);

create function :GW_SCHEMA.get_job(
  worker_id text,
  task_identifiers text[] = null,
  job_expiry interval = interval '4 hours',
  forbidden_flags text[] = null,
  now timestamptz = now()
) returns :GW_SCHEMA.jobs
language plpgsql volatile as $$
declare
  picked_id bigint;
  picked_queue text;
  result :GW_SCHEMA.jobs;
begin
  if worker_id is null or length(worker_id) < 10 then
    raise exception 'invalid worker id';
  end if;

  select j.queue_name, j.id
    into picked_queue, picked_id
    from :GW_SCHEMA.jobs j
   where (j.locked_at is null or j.locked_at < get_job.now - job_expiry)
     and (
       j.queue_name is null
       or exists (
         select 1
           from :GW_SCHEMA.job_queues q
          where q.queue_name = j.queue_name
            and (q.locked_at is null or q.locked_at < get_job.now - job_expiry)
            for update skip locked
       )
     )
     and j.run_at <= get_job.now
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
       set locked_by = worker_id, locked_at = get_job.now
     where q.queue_name = picked_queue;
  end if;

  update :GW_SCHEMA.jobs j
     set attempts = j.attempts + 1, locked_by = worker_id, locked_at = get_job.now
   where j.id = picked_id
  returning * into result;

  return result;
end;
$$;
