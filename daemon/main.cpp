// kvtierd: the kvtier cache daemon.  Runs in the foreground (systemd Type=notify or a shell).
#include "daemon/daemon_main.h"

int main(int argc, char** argv) {
  return kvtier::daemon_main(argc, argv);
}
