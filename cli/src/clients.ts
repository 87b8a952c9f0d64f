/**
 * The gRPC clients of the services the CLI talks to. Each is opened on first
 * use (a command that only talks to the scheduler never dials the others) and
 * `close()` closes every opened one, so the process exits as soon as the
 * command is done.
 */
import { CoordinatorServiceClient, JobServiceClient, SchedulerServiceClient } from "@aspen/proto";
import { createClient } from "@aspen/runtime";

/** host:port of each service, from the global options. */
export interface Addresses {
  scheduler: string;
  jobManager: string;
  coordinator: string;
}

export class Clients {
  private schedulerClient: SchedulerServiceClient | undefined;
  private jobClient: JobServiceClient | undefined;
  private coordinatorClient: CoordinatorServiceClient | undefined;

  /** `addresses` is read at first use, i.e. after the command line is parsed. */
  constructor(private readonly addresses: () => Addresses) {}

  get scheduler(): SchedulerServiceClient {
    return (this.schedulerClient ??= createClient(SchedulerServiceClient, this.addresses().scheduler));
  }

  get jobs(): JobServiceClient {
    return (this.jobClient ??= createClient(JobServiceClient, this.addresses().jobManager));
  }

  get coordinator(): CoordinatorServiceClient {
    return (this.coordinatorClient ??= createClient(CoordinatorServiceClient, this.addresses().coordinator));
  }

  close(): void {
    this.schedulerClient?.close();
    this.jobClient?.close();
    this.coordinatorClient?.close();
  }
}
