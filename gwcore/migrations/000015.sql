-- The trigger functions of the tables that migration 11 dropped are unused now.
drop function :GW_SCHEMA.jobs__increase_job_queue_count();
drop function :GW_SCHEMA.jobs__decrease_job_queue_count();
drop function :GW_SCHEMA.tg__update_timestamp();

-- Releases every job and queue lock that the given workers hold, for workers that crashed.
create function :GW_SCHEMA.force_unlock_workers(worker_ids text[]) returns void
language sql volatile as $$
  update :GW_SCHEMA.jobs
     set locked_at = null, locked_by = null
   where locked_by = any(worker_ids);
  update :GW_SCHEMA.job_queues
     set locked_at = null, locked_by = null
   where locked_by = any(worker_ids);
$$;
