/** aspen.v1.CoordinatorService over the Coordinator. */
import { CoordinatorServiceService, type CoordinatorServiceServer } from "@aspen/proto";
import { bindService, type ServiceBinding } from "@aspen/runtime";
import type { Coordinator } from "./coordinator.js";

export function coordinatorService(coordinator: Coordinator): ServiceBinding<CoordinatorServiceServer> {
  return bindService<CoordinatorServiceServer>("aspen.v1.CoordinatorService", CoordinatorServiceService, {
    connect: (call) => coordinator.connect(call),
    listWorkers: async () => ({ workers: coordinator.workers() }),
    placeJob: async (req) => ({ workerId: await coordinator.place(req) }),
    cancelAttempt: async (req) => {
      coordinator.cancel(req);
      return {};
    },
  });
}
