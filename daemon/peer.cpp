#include "daemon/peer.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace kvtier {

Result<PeerInfo> peer_of(int sock) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return error(Errc::kIo, std::string("SO_PEERCRED: ") + std::strerror(errno));
  PeerInfo p;
  p.pid = cred.pid;
  p.uid = cred.uid;
  p.gid = cred.gid;
#ifdef SO_PEERGROUPS
  std::vector<gid_t> groups(64);
  socklen_t glen = groups.size() * sizeof(gid_t);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) != 0) {
    if (errno == ERANGE) {  // glen now holds the size needed
      groups.resize(glen / sizeof(gid_t));
      if (::getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) != 0) glen = 0;
    } else {
      glen = 0;
    }
  }
  groups.resize(glen / sizeof(gid_t));
  p.groups = std::move(groups);
#endif
  std::ifstream comm("/proc/" + std::to_string(p.pid) + "/comm");
  std::getline(comm, p.comm);
  return p;
}

}  // namespace kvtier
