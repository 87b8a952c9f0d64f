/** aspen.v1.CoordinatorService over the Coordinator. */
import { CoordinatorServiceService, type CoordinatorServiceServer } from "@aspen/proto";
import { status } from "@grpc/grpc-js";
import { bindService, errorForStatus, serveBatchStream, type Logger, type ServiceBinding } from "@aspen/runtime";
import type { Coordinator } from "./coordinator.js";

export function coordinatorService(coordinator: Coordinator, log: Logger): ServiceBinding<CoordinatorServiceServer> {
  return bindService<CoordinatorServiceServer>("aspen.v1.CoordinatorService", CoordinatorServiceService, {
    connect: (call) => coordinator.connect(call),
    listWorkers: async () => ({ workers: coordinator.workers() }),
    getWorker: async (req) => coordinator.worker(req.workerId),
    drainWorker: async (req) => coordinator.drain(req.workerId, req.undrain),
    matchWorkers: async (req) => ({ workers: coordinator.match(req.selector) }),
    placeJobs: async (req) => ({ results: await coordinator.placeMany(req.placements) }),
    placeJobStream: (call) =>
      serveBatchStream(call, async (batch) => ({ results: await coordinator.placeMany(batch?.placements ?? []) }), log),
    placeJob: async (req) => {
      const [result] = await coordinator.placeMany([req], () => "");
      if (!result || result.code !== 0) throw errorForStatus(result?.code ?? status.INTERNAL, result?.message ?? "no result");
      return { workerId: result.workerId };
    },
    cancelAttempt: async (req) => {
      coordinator.cancel(req);
      return {};
    },
    createWorkerGroup: (req) => coordinator.createGroup(req.group),
    getWorkerGroup: async (req) => coordinator.group(req.name),
    listWorkerGroups: async () => ({ groups: coordinator.listGroups() }),
    updateWorkerGroup: (req) => coordinator.updateGroup(req.group),
    deleteWorkerGroup: async (req) => {
      await coordinator.deleteGroup(req.name);
      return {};
    },
  });
}
