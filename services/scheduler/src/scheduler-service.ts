/** aspen.v1.SchedulerService over the Scheduler. */
import { SchedulerServiceService, type SchedulerServiceServer } from "@aspen/proto";
import { bindService, type ServiceBinding } from "@aspen/runtime";
import type { Lease } from "./lease.js";
import type { Scheduler } from "./scheduler.js";

export function schedulerService(scheduler: Scheduler, lease: Lease): ServiceBinding<SchedulerServiceServer> {
  return bindService<SchedulerServiceServer>("aspen.v1.SchedulerService", SchedulerServiceService, {
    createSchedule: (req) => scheduler.create(req),
    getSchedule: async (req) => scheduler.get(req.scheduleId),
    listSchedules: async (req) => scheduler.list(req),
    deleteSchedule: async (req) => {
      await scheduler.delete(req.scheduleId);
      return {};
    },
    pauseSchedule: (req) => scheduler.pause(req.scheduleId, req.note),
    resumeSchedule: (req) => scheduler.resume(req.scheduleId),
    previewSchedule: async (req) => scheduler.preview(req),
    updateSchedule: (req) => scheduler.updateSchedule(req),
    triggerSchedule: (req) => scheduler.trigger(req.scheduleId),
    backfillSchedule: (req) => scheduler.backfill(req),
    getLeader: async () => lease.view(),
  });
}
