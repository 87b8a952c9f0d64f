/**
 * aspen.v1.SchedulerService over the Scheduler. Every Schedule in an answer
 * goes through `redactSchedule` (secret values and sealed bytes never leave).
 */
import { SchedulerServiceService, type SchedulerServiceServer } from "@aspen/proto";
import { redactSchedule } from "@aspen/model";
import { bindService, type ServiceBinding } from "@aspen/runtime";
import type { Lease } from "./lease.js";
import type { Scheduler } from "./scheduler.js";

export function schedulerService(scheduler: Scheduler, lease: Lease): ServiceBinding<SchedulerServiceServer> {
  return bindService<SchedulerServiceServer>("aspen.v1.SchedulerService", SchedulerServiceService, {
    createSchedule: async (req) => redactSchedule(await scheduler.create(req)),
    getSchedule: async (req) => redactSchedule(scheduler.get(req.scheduleId)),
    listSchedules: async (req) => {
      const res = scheduler.list(req);
      return { ...res, schedules: res.schedules.map(redactSchedule) };
    },
    deleteSchedule: async (req) => {
      await scheduler.delete(req.scheduleId);
      return {};
    },
    pauseSchedule: async (req) => redactSchedule(await scheduler.pause(req.scheduleId, req.note)),
    resumeSchedule: async (req) => redactSchedule(await scheduler.resume(req.scheduleId)),
    previewSchedule: async (req) => scheduler.preview(req),
    updateSchedule: async (req) => redactSchedule(await scheduler.updateSchedule(req)),
    triggerSchedule: (req) => scheduler.trigger(req.scheduleId),
    backfillSchedule: (req) => scheduler.backfill(req),
    getLeader: async () => lease.view(),
  });
}
