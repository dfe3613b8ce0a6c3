"""Jobs: /imagine and the buttons under results, the job store, the fair queue, the dispatcher that feeds the
generator, and each job's progress message. Moderation and challenges build on this feature, never the reverse."""
